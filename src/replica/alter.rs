//! `ALTER TABLE`: what an `ADD COLUMN`, `RENAME COLUMN` or `DROP COLUMN` writes into its table's catalog
//! document, checked against the table as the batch sees it (docs/design.md § ALTER TABLE).
//!
//! An `ALTER` writes one field of one column, keyed by the column's id, never a new
//! definition: fields written concurrently on two nodes merge one by one, and
//! `catalog::resolve_table` computes the same definition from them everywhere. Nothing
//! else is written: records, index entries and implicit documents stay valid as they are
//! (`TableSchema::extends`).

use crate::catalog::{self, Catalog, TableEntry};
use crate::doc::AlterField;
use crate::error::{AlterRefusal, WriteError};
use crate::schema::{self, ColumnDef, TableSchema, COLUMNS_MAX};
use crate::types::ColumnType;

/// One field an `ALTER` writes: the column it is about and its bytes.
pub(crate) struct AlterWrite {
    pub field: AlterField,
    pub column_id: String,
    pub bytes: Vec<u8>,
}

fn refused(table: &TableSchema, column: &str, reason: AlterRefusal) -> WriteError {
    WriteError::AlterRefused { table: table.name.clone(), column: column.to_string(), reason }
}

/// `ADD COLUMN`: the column's definition under a fresh id. `NOT NULL` needs a non-NULL
/// default (rows written before read as the default); a COUNTER cannot be added.
pub(crate) fn add_column(entry: &TableEntry, column: ColumnDef) -> Result<AlterWrite, WriteError> {
    let table = &entry.schema;
    let name = schema::normalize_name(&column.name)?;
    let column = ColumnDef { name, stored_id: None, added: true, ..column };
    if table.column_index(&column.name).is_some() {
        return Err(refused(table, &column.name, AlterRefusal::ColumnExists));
    }
    if column.ty == ColumnType::Counter {
        return Err(refused(table, &column.name, AlterRefusal::CounterAdded));
    }
    if column.not_null && column.default.as_ref().is_none_or(|d| d.is_null()) {
        return Err(refused(table, &column.name, AlterRefusal::NotNullWithoutDefault));
    }
    if table.columns.len() >= COLUMNS_MAX {
        return Err(refused(table, &column.name, AlterRefusal::TooManyColumns));
    }
    let mut n = 1;
    let column_id = loop {
        let id = schema::column_id_nth(&column.name, column.ty, n);
        if !table.columns.iter().any(|c| c.id() == id) {
            break id;
        }
        n += 1;
    };
    // The default must fit the type: validated as part of the resulting definition.
    let with_id = ColumnDef { stored_id: Some(column_id.clone()), ..column };
    let checked = TableSchema { columns: [table.columns.clone(), vec![with_id]].concat(), ..table.clone() };
    let checked = checked.validate()?;
    let column = checked.columns.last().expect("just added").clone();
    Ok(AlterWrite { field: AlterField::Add, column_id, bytes: catalog::encode_added_column(&column) })
}

/// `RENAME COLUMN from TO to`: the column's new name under its id. Refused for the hidden
/// identity of a key-less table and for a column a `CHECK` or foreign key names (their
/// SQL is not rewritten); indexes and the primary key follow by id.
pub(crate) fn rename_column(entry: &TableEntry, from: &str, to: &str) -> Result<AlterWrite, WriteError> {
    let table = &entry.schema;
    let from = from.to_ascii_lowercase();
    let to = schema::normalize_name(to)?;
    let i = table
        .column_index(&from)
        .ok_or_else(|| WriteError::UnknownColumn { table: table.name.clone(), column: from.clone() })?;
    if i < table.hidden_columns() {
        return Err(refused(table, &from, AlterRefusal::HiddenColumn));
    }
    if table.column_index(&to).is_some_and(|j| j != i) {
        return Err(refused(table, &to, AlterRefusal::ColumnExists));
    }
    if names_column(table, &from) {
        return Err(refused(table, &from, AlterRefusal::UsedByConstraint));
    }
    if is_time_column(table, i) {
        return Err(refused(table, &from, AlterRefusal::TimeColumn));
    }
    Ok(AlterWrite { field: AlterField::Name, column_id: table.columns[i].id(), bytes: to.into_bytes() })
}

/// `DROP COLUMN`: the column's drop flag under its id. As SQLite, refused for a key
/// column, a column an index covers, a column a `CHECK` or foreign key names, and the
/// table's last column; here also for the hidden identity of a key-less table. The
/// column keeps its place and values (records are positional); nothing is rewritten.
pub(crate) fn drop_column(catalog: &Catalog, entry: &TableEntry, name: &str) -> Result<AlterWrite, WriteError> {
    let table = &entry.schema;
    let name = name.to_ascii_lowercase();
    let i = table
        .column_index(&name)
        .ok_or_else(|| WriteError::UnknownColumn { table: table.name.clone(), column: name.clone() })?;
    if i < table.hidden_columns() {
        return Err(refused(table, &name, AlterRefusal::HiddenColumn));
    }
    if table.primary_key.contains(&name) {
        return Err(refused(table, &name, AlterRefusal::KeyColumn));
    }
    if catalog.indexes_of(&table.name).any(|index| index.def.schema.columns.contains(&name)) {
        return Err(refused(table, &name, AlterRefusal::Indexed));
    }
    if names_column(table, &name) {
        return Err(refused(table, &name, AlterRefusal::UsedByConstraint));
    }
    if table.visible_columns().count() == 1 {
        return Err(refused(table, &name, AlterRefusal::LastColumn));
    }
    if is_time_column(table, i) {
        return Err(refused(table, &name, AlterRefusal::TimeColumn));
    }
    Ok(AlterWrite { field: AlterField::Drop, column_id: table.columns[i].id(), bytes: Vec::new() })
}

/// Whether column `i` is an append-only table's time column (its options name it, and
/// its blocks are split by its id).
fn is_time_column(table: &TableSchema, i: usize) -> bool {
    table.time_column_index() == Some(i)
}

/// Whether a `CHECK` or foreign key of the table names the column: a foreign key by its
/// column list, a `CHECK` by any identifier in its SQL equal to the name (a string
/// literal that spells it counts too: refusing too often is safe, a stale CHECK is not).
fn names_column(table: &TableSchema, column: &str) -> bool {
    let in_check = table.checks.iter().any(|check| {
        check
            .expr_sql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word.eq_ignore_ascii_case(column))
    });
    in_check || table.foreign_keys.iter().any(|fk| fk.columns.iter().any(|c| c == column))
}
