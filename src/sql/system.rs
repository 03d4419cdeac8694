//! System tables: the catalog and the conflicts of the snapshot, queryable and joinable
//! like any table.
//!
//! - `edgestore_tables` — one row per live table and view: name, epoch, primary key,
//!   definition as SQL, how many concurrent definitions conflict (0 when none), and the
//!   kind (`table`, `append_only`, `view`).
//!   `lost_alters` lists the `ALTER TABLE`s that lost to concurrent ones (NULL when none).
//! - `edgestore_columns` — one row per column of a live table (a key-less table's hidden
//!   `rowid` and `_origin` are not listed), with its stable id and whether `ALTER TABLE`
//!   added it.
//! - `edgestore_indexes` — one row per usable index, and whether it is unique.
//! - `edgestore_conflicts` — `kind` `column`: one row per concurrent value of a
//!   conflicting column: table, rendered primary key, the first key column's value (to
//!   join with the table), column, the winning value, this value, the node that wrote it,
//!   and whether it is the winner. `kind` `unique`: one row per row of a unique conflict
//!   (rows sharing a value under a unique index): the index's columns, the winning row's
//!   rendered key, the shared value, no node (docs/design.md § Unique indexes). `kind`
//!   `duplicate`: one row per row of an append-only table that shares a value of its
//!   deduplication key with others: the rendered key value, the key's columns, the
//!   identity (`origin:seq:pos`) of the row reads show as the winner, this row's identity
//!   as the value, its origin as the node (docs/design.md § Identity and merge).
//! - `edgestore_dead_letters` — what this node's ingest (MQTT) received and refused, newest
//!   10 000 kept: sequence, time, source, topic, table, payload (its first 1 KiB as text,
//!   invalid UTF-8 replaced), its whole length and the error. Node-local, not replicated.
//!
//! They are computed from the snapshot when scanned (they are small next to user tables).

use super::plan::Row;
use super::SqlError;
use crate::catalog;
use crate::replica::Snapshot;
use crate::types::{ColumnType, Value};

/// Names starting with this prefix are reserved for system tables.
pub const SYSTEM_PREFIX: &str = "edgestore_";

/// A system table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SystemTable {
    Tables,
    Columns,
    Indexes,
    Conflicts,
    DeadLetters,
}

use ColumnType as T;

impl SystemTable {
    pub fn by_name(name: &str) -> Option<SystemTable> {
        match name {
            "edgestore_tables" => Some(SystemTable::Tables),
            "edgestore_columns" => Some(SystemTable::Columns),
            "edgestore_indexes" => Some(SystemTable::Indexes),
            "edgestore_conflicts" => Some(SystemTable::Conflicts),
            "edgestore_dead_letters" => Some(SystemTable::DeadLetters),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SystemTable::Tables => "edgestore_tables",
            SystemTable::Columns => "edgestore_columns",
            SystemTable::Indexes => "edgestore_indexes",
            SystemTable::Conflicts => "edgestore_conflicts",
            SystemTable::DeadLetters => "edgestore_dead_letters",
        }
    }

    pub fn columns(self) -> &'static [(&'static str, ColumnType)] {
        match self {
            SystemTable::Tables => &[
                ("name", T::Text),
                ("epoch", T::Integer),
                ("primary_key", T::Text),
                ("sql", T::Text),
                ("conflicting_definitions", T::Integer),
                ("lost_alters", T::Text),
                ("kind", T::Text),
            ],
            SystemTable::Columns => &[
                ("table_name", T::Text),
                ("position", T::Integer),
                ("name", T::Text),
                ("type", T::Text),
                ("not_null", T::Boolean),
                ("default_value", T::Text),
                ("pk_position", T::Integer),
                ("column_id", T::Text),
                ("added", T::Boolean),
            ],
            SystemTable::Indexes => &[
                ("name", T::Text),
                ("table_name", T::Text),
                ("columns", T::Text),
                ("sql", T::Text),
                ("is_unique", T::Boolean),
            ],
            SystemTable::Conflicts => &[
                ("table_name", T::Text),
                ("primary_key", T::Text),
                ("key_value", T::Text),
                ("column_name", T::Text),
                ("winner", T::Text),
                ("value", T::Text),
                ("node", T::Text),
                ("is_winner", T::Boolean),
                ("kind", T::Text),
            ],
            SystemTable::DeadLetters => &[
                ("seq", T::Integer),
                ("received_at", T::Timestamp),
                ("source", T::Text),
                ("topic", T::Text),
                ("table_name", T::Text),
                ("payload", T::Text),
                ("payload_bytes", T::Integer),
                ("error", T::Text),
            ],
        }
    }

    pub fn rows(self, snap: &Snapshot) -> Result<Vec<Row>, SqlError> {
        let catalog = snap.catalog();
        let text = |s: &str| Value::Text(s.to_string());
        Ok(match self {
            SystemTable::Tables => {
                let mut rows: Vec<Row> = catalog
                    .live_tables()
                    .map(|t| {
                        vec![
                            text(&t.schema.name),
                            Value::Integer(t.causal_length as i64),
                            text(&t.schema.primary_key.join(", ")),
                            text(&catalog::table_sql(&t.schema)),
                            Value::Integer(t.conflict.as_ref().map_or(0, |c| c.definitions.len() as i64)),
                            lost_alters(t.conflict.as_ref()),
                            text(if t.schema.append.is_some() { "append_only" } else { "table" }),
                        ]
                    })
                    .collect();
                rows.extend(catalog.live_views().map(|v| {
                    vec![
                        text(&v.def.name),
                        Value::Integer(v.causal_length as i64),
                        text(""),
                        text(&catalog::view_sql(&v.def)),
                        Value::Integer(v.conflict.as_ref().map_or(0, |c| c.definitions.len() as i64)),
                        Value::Null,
                        text("view"),
                    ]
                }));
                rows.sort_by(|a, b| super::value::compare(&a[0], &b[0]));
                rows
            }
            SystemTable::Columns => catalog
                .live_tables()
                .flat_map(|t| {
                    // A key-less table's hidden identity is not one of its columns here.
                    t.schema.visible_columns().enumerate().map(|(i, c)| {
                        let pk = t.schema.primary_key.iter().position(|k| *k == c.name);
                        vec![
                            text(&t.schema.name),
                            Value::Integer(i as i64),
                            text(&c.name),
                            text(c.ty.sql_name()),
                            Value::Boolean(c.not_null),
                            c.default.as_ref().map_or(Value::Null, |d| Value::Text(literal(d))),
                            pk.map_or(Value::Null, |p| Value::Integer(p as i64 + 1)),
                            text(&c.id()),
                            Value::Boolean(c.added),
                        ]
                    })
                })
                .collect(),
            SystemTable::Indexes => catalog
                .live_tables()
                .flat_map(|t| catalog.indexes_of(&t.schema.name))
                .map(|i| {
                    let s = &i.def.schema;
                    vec![
                        text(&s.name),
                        text(&s.table),
                        text(&s.columns.join(", ")),
                        text(&catalog::index_sql(s)),
                        Value::Boolean(s.unique),
                    ]
                })
                .collect(),
            SystemTable::Conflicts => conflict_rows(snap)?,
            SystemTable::DeadLetters => dead_letter_rows(snap)?,
        })
    }
}

fn conflict_rows(snap: &Snapshot) -> Result<Vec<Row>, SqlError> {
    let mut rows = Vec::new();
    for row in snap.all_conflicts()? {
        let key = render_key(&row.key);
        let first = row.key.first().cloned().unwrap_or(Value::Null);
        for column in row.columns {
            let last = column.values.len().saturating_sub(1);
            for (i, (value, node)) in column.values.into_iter().enumerate() {
                rows.push(vec![
                    Value::Text(row.table.clone()),
                    Value::Text(key.clone()),
                    first.clone(),
                    Value::Text(column.column.clone()),
                    column.winner.clone(),
                    value,
                    Value::Text(node.to_string()),
                    Value::Boolean(i == last),
                    Value::Text("column".into()),
                ]);
            }
        }
    }
    for conflict in snap.unique_conflicts()? {
        let winner = render_key(&conflict.keys[0]);
        let value = match conflict.value.as_slice() {
            [one] => one.clone(),
            several => Value::Text(render_key(several)),
        };
        for (i, key) in conflict.keys.iter().enumerate() {
            rows.push(vec![
                Value::Text(conflict.table.clone()),
                Value::Text(render_key(key)),
                key.first().cloned().unwrap_or(Value::Null),
                Value::Text(conflict.columns.join(", ")),
                Value::Text(winner.clone()),
                value.clone(),
                Value::Null,
                Value::Boolean(i == 0),
                Value::Text("unique".into()),
            ]);
        }
    }
    for conflict in snap.duplicate_conflicts()? {
        let winner = conflict.rows[0].to_string();
        for (i, row) in conflict.rows.iter().enumerate() {
            rows.push(vec![
                Value::Text(conflict.table.clone()),
                Value::Text(render_key(&conflict.value)),
                conflict.value.first().cloned().unwrap_or(Value::Null),
                Value::Text(conflict.columns.join(", ")),
                Value::Text(winner.clone()),
                Value::Text(row.to_string()),
                Value::Text(row.origin.to_string()),
                Value::Boolean(i == 0),
                Value::Text("duplicate".into()),
            ]);
        }
    }
    Ok(rows)
}

fn dead_letter_rows(snap: &Snapshot) -> Result<Vec<Row>, SqlError> {
    let letters = snap.dead_letters()?;
    Ok(letters
        .into_iter()
        .map(|(seq, letter)| {
            vec![
                Value::Integer(seq as i64),
                Value::Timestamp(letter.received_ms),
                Value::Text(letter.source),
                Value::Text(letter.topic),
                Value::Text(letter.table),
                Value::Text(String::from_utf8_lossy(&letter.payload).into_owned()),
                Value::Integer(letter.payload_bytes as i64),
                Value::Text(letter.error),
            ]
        })
        .collect())
}

/// A value as a SQL literal: `'it''s'`, `x'00ff'`, `1.5`, `NULL`.
pub(crate) fn literal(v: &Value) -> String {
    match v {
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Value::Real(r) => super::value::real_text(*r),
        other => other.to_string(),
    }
}

/// A primary key for display: `(1, 'a')`.
pub(crate) fn render_key(key: &[Value]) -> String {
    let parts: Vec<String> = key.iter().map(literal).collect();
    format!("({})", parts.join(", "))
}

/// The `ALTER TABLE`s that lost, each with its writer, one per line; NULL when none.
fn lost_alters(conflict: Option<&catalog::DdlConflict>) -> Value {
    let alters = conflict.map(|c| c.alters.as_slice()).unwrap_or_default();
    if alters.is_empty() {
        return Value::Null;
    }
    let lines: Vec<String> = alters.iter().map(|(sql, node)| format!("{sql} -- by {node}")).collect();
    Value::Text(lines.join("\n"))
}
