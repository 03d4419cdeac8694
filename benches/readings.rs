//! The `readings` table the storage measurement programs load (included with `#[path]`):
//! `readings (id INTEGER PRIMARY KEY, sensor INTEGER, ts INTEGER, value REAL)`.

use edgestore::{ColumnDef, ColumnType, TableSchema, Value};

/// The table's definition.
pub fn schema() -> TableSchema {
    TableSchema::new("readings")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("sensor", ColumnType::Integer))
        .column(ColumnDef::new("ts", ColumnType::Integer))
        .column(ColumnDef::new("value", ColumnType::Real))
        .primary_key(&["id"])
}

/// Row `id`'s values.
pub fn reading(id: i64) -> [(&'static str, Value); 4] {
    [
        ("id", Value::from(id)),
        ("sensor", Value::from(id % 97)),
        ("ts", Value::from(1_700_000_000_000 + id * 1000)),
        ("value", Value::Real(id as f64 * 0.25)),
    ]
}
