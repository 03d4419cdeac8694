//! `ALTER TABLE ... ADD COLUMN`, `RENAME COLUMN` and `DROP COLUMN`, as write operations
//! (docs/design.md § ALTER TABLE). The replica checks each against the table as the
//! batch sees it (`replica/alter.rs`); here the SQL is read and what SQLite refuses is
//! refused with SQLite's words.

use sqlparser::ast;

use super::bind::{self, PlanCtx};
use super::{create_table, SqlError};
use crate::replica::WriteOp;

/// The operations of one `ALTER TABLE` statement, in written order, as one batch.
pub(super) fn alter_table(ctx: PlanCtx<'_>, at: &ast::AlterTable) -> Result<Vec<WriteOp>, SqlError> {
    if at.only || at.location.is_some() || at.on_cluster.is_some() || at.table_type.is_some() {
        return Err(SqlError::unsupported("ALTER TABLE options (ONLY, ON CLUSTER, LOCATION, table types)"));
    }
    let table = bind::object_name(&at.name)?;
    let Some(entry) = ctx.snap.catalog().table(&table) else {
        return match at.if_exists {
            true => Ok(Vec::new()),
            false => Err(crate::error::WriteError::UnknownTable(table).into()),
        };
    };
    let mut ops = Vec::with_capacity(at.operations.len());
    // Columns this statement drops: a later `DROP COLUMN IF EXISTS` of one does nothing.
    let mut dropped: Vec<String> = Vec::new();
    for operation in &at.operations {
        match operation {
            ast::AlterTableOperation::AddColumn { if_not_exists, column_def, column_position: None, .. } => {
                let column = create_table::added_column(ctx, &table, column_def)?;
                if *if_not_exists && entry.schema.column_index(&column.name).is_some() {
                    continue;
                }
                ops.push(WriteOp::AddColumn { table: table.clone(), column });
            }
            ast::AlterTableOperation::RenameColumn { old_column_name, new_column_name } => {
                let (from, to) = (bind::ident(old_column_name), bind::ident(new_column_name));
                ops.push(WriteOp::RenameColumn { table: table.clone(), from, to });
            }
            ast::AlterTableOperation::DropColumn { column_names, if_exists, drop_behavior: None, .. } => {
                for column in column_names.iter().map(bind::ident) {
                    let gone = entry.schema.column_index(&column).is_none() || dropped.contains(&column);
                    if *if_exists && gone {
                        continue;
                    }
                    dropped.push(column.clone());
                    ops.push(WriteOp::DropColumn { table: table.clone(), column });
                }
            }
            ast::AlterTableOperation::RenameTable { .. } => {
                return Err(SqlError::unsupported(
                    "ALTER TABLE ... RENAME TO (not built yet; ADD, RENAME and DROP COLUMN are)",
                ))
            }
            other => return Err(SqlError::unsupported(format!("ALTER TABLE ... {other}"))),
        }
    }
    Ok(ops)
}
