//! DDL and DML: statements that become one [`WriteBatch`] (`INSERT` in `insert.rs`).
//!
//! Every statement is computed against a snapshot taken on the thread that owns the
//! replica, then written as one atomic, durable batch, so `UPDATE ... WHERE` and
//! `INSERT ... ON CONFLICT` read and write the same state. DDL goes through the replicated
//! catalog like any other write. An assignment to a `COUNTER` column becomes an increment
//! by the difference (`SET c = c + 1` increments by 1), so concurrent increments on other
//! nodes still add up.

use std::sync::Arc;

use sqlparser::ast;

use super::access::key_value;
use super::bind::{self, Binder, PlanCtx};
use super::check::Checks;
use super::expr::Expr;
use super::limits::{self, Limits, Reservation};
use super::plan::{Plan, Row, Scope};
use super::value;
use super::{alter_table, create_table, datetime, exec, explain, from, insert, range_delete, SqlError};
use crate::catalog::TableEntry;
use crate::replica::{Replica, Snapshot, WriteBatch, WriteOp};
use crate::schema::IndexSchema;
use crate::types::{ColumnType, Value};

/// Runs a write statement on the replica; returns the number of rows affected.
pub(crate) fn run(
    replica: &mut Replica,
    statement: &ast::Statement,
    params: &[Value],
    now_ms: i64,
    limits: &Limits,
) -> Result<u64, SqlError> {
    let snap = Arc::new(replica.snapshot()?);
    let ctx = PlanCtx::new(&snap, params, limits).at(Some(now_ms));
    let (ops, affected) = match statement {
        ast::Statement::CreateTable(ct) => create_table::create_table(ctx, ct)?,
        ast::Statement::CreateIndex(ci) => (vec![create_index(ci)?], 0),
        ast::Statement::CreateView(cv) => (super::view::create_view(ctx, cv)?, 0),
        ast::Statement::AlterTable(at) => (alter_table::alter_table(ctx, at)?, 0),
        ast::Statement::Drop {
            object_type, if_exists, names, cascade: false, purge: false, temporary: false, ..
        } => (drop_ops(object_type, *if_exists, names)?, 0),
        ast::Statement::Insert(ins) => insert::insert(ctx, ins)?,
        ast::Statement::Update(update) => self::update(ctx, update)?,
        ast::Statement::Delete(delete) => self::delete(ctx, delete)?,
        other => return Err(SqlError::unsupported(statement_feature(other))),
    };
    // The read transaction ends before the write begins: holding it would pin old pages.
    drop(snap);
    if ops.is_empty() {
        return Ok(affected);
    }
    // A range delete learns how many rows it removed only when it is applied.
    let counted_by_write = ops.iter().any(|op| matches!(op, WriteOp::DeleteRange { .. }));
    let receipt = replica.write(WriteBatch { ops }, now_ms)?;
    Ok(if counted_by_write { receipt.rows_affected } else { affected })
}

pub(crate) fn first_words(statement: &ast::Statement) -> String {
    statement.to_string().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The feature an unsupported statement is, in the words of the SQL a user wrote.
pub(crate) fn statement_feature(statement: &ast::Statement) -> String {
    use ast::Statement as S;
    let named = match statement {
        S::AlterView { .. } => "ALTER VIEW",
        S::StartTransaction { .. } | S::Commit { .. } | S::Rollback { .. } => {
            "BEGIN/COMMIT/ROLLBACK transactions (each statement is its own atomic transaction)"
        }
        S::Savepoint { .. } | S::ReleaseSavepoint { .. } => "SAVEPOINT",
        S::CreateTrigger(_) => "CREATE TRIGGER",
        S::DropTrigger(_) => "DROP TRIGGER",
        S::CreateVirtualTable { .. } => "CREATE VIRTUAL TABLE",
        S::AlterIndex { .. } => "ALTER INDEX",
        S::AttachDatabase { .. } => "ATTACH DATABASE",
        S::Pragma { .. } => "PRAGMA (the system tables edgestore_tables, edgestore_columns, ... describe the schema)",
        S::Vacuum(_) => "VACUUM",
        S::Analyze(_) => "ANALYZE",
        S::Truncate(_) => "TRUNCATE (write DELETE FROM t)",
        S::Merge(_) => "MERGE",
        S::Drop { .. } => "DROP with CASCADE, PURGE or TEMPORARY",
        S::Copy { .. } => "COPY",
        S::CreateFunction(_) => "CREATE FUNCTION",
        S::CreateProcedure { .. } => "CREATE PROCEDURE",
        S::CreateSchema { .. } | S::CreateDatabase { .. } => "CREATE SCHEMA/DATABASE",
        S::CreateSequence { .. } => "CREATE SEQUENCE",
        S::CreateType { .. } => "CREATE TYPE",
        S::Grant(_) | S::Revoke(_) => "GRANT/REVOKE",
        S::Set(_) => "SET",
        S::Use(_) => "USE",
        S::Prepare { .. } | S::Execute { .. } | S::Deallocate { .. } => "PREPARE/EXECUTE (use sql::prepare)",
        S::Explain { analyze: true, .. } => "EXPLAIN ANALYZE",
        S::Explain { .. } | S::ExplainTable { .. } => "EXPLAIN of this statement",
        _ => return format!("the statement {}", first_words(statement)),
    };
    named.to_string()
}

pub(super) fn index_column(c: &ast::IndexColumn) -> Result<String, SqlError> {
    match &c.column.expr {
        ast::Expr::Identifier(i) if c.operator_class.is_none() => Ok(bind::ident(i)),
        other => Err(SqlError::unsupported(format!("key or index on expression {other}"))),
    }
}

fn create_index(ci: &ast::CreateIndex) -> Result<WriteOp, SqlError> {
    let Some(name) = &ci.name else { return Err(SqlError::unsupported("CREATE INDEX without a name")) };
    let nulls_not_distinct = ci.nulls_distinct == Some(false);
    if ci.predicate.is_some() || !ci.include.is_empty() || ci.using.is_some() || ci.concurrently || nulls_not_distinct {
        return Err(SqlError::unsupported("partial, USING, INCLUDE or NULLS NOT DISTINCT indexes"));
    }
    let name = bind::object_name(name)?;
    create_table::check_name(&name)?;
    let schema = IndexSchema {
        name,
        table: bind::object_name(&ci.table_name)?,
        columns: ci.columns.iter().map(index_column).collect::<Result<_, _>>()?,
        unique: ci.unique,
        column_ids: Vec::new(),
    };
    Ok(WriteOp::CreateIndex { schema, if_not_exists: ci.if_not_exists })
}

fn drop_ops(
    object_type: &ast::ObjectType,
    if_exists: bool,
    names: &[ast::ObjectName],
) -> Result<Vec<WriteOp>, SqlError> {
    names
        .iter()
        .map(|n| {
            let name = bind::object_name(n)?;
            match object_type {
                ast::ObjectType::Table => Ok(WriteOp::DropTable { name, if_exists }),
                ast::ObjectType::Index if name.starts_with(create_table::SQLITE_PREFIX) => Err(SqlError::invalid(
                    format!("index associated with UNIQUE or PRIMARY KEY constraint cannot be dropped: {name}"),
                )),
                ast::ObjectType::Index => Ok(WriteOp::DropIndex { name, if_exists }),
                ast::ObjectType::View => Ok(WriteOp::DropView { name, if_exists }),
                other => Err(SqlError::unsupported(format!("DROP {other} (edgestore has tables, indexes and views)"))),
            }
        })
        .collect()
}

/// A value converted to a column's type where SQLite would (2.0 into an INTEGER column,
/// 1 into a BOOLEAN one), and ISO-8601 text into a TIMESTAMP column (the narrow rule of
/// [`datetime::iso_timestamp_ms`]); anything else is left for the replica's type check.
pub(super) fn conform(v: Value, ty: ColumnType) -> Value {
    if let (Value::Text(t), ColumnType::Timestamp) = (&v, ty) {
        if let Some(ms) = datetime::iso_timestamp_ms(t) {
            return Value::Timestamp(ms);
        }
    }
    key_value(&v, ty).unwrap_or(v)
}

pub(super) fn target_table<'s>(snap: &'s Snapshot, name: &ast::ObjectName) -> Result<&'s TableEntry, SqlError> {
    let name = bind::object_name(name)?;
    let catalog = snap.catalog();
    match catalog.table(&name) {
        Some(table) => Ok(table),
        None if catalog.view(&name).is_some() => {
            Err(SqlError::invalid(format!("{name} is a view: views are read-only")))
        }
        None => Err(SqlError::UnknownTable(name)),
    }
}

pub(super) fn assignments(
    ctx: PlanCtx<'_>,
    scope: &Scope,
    table: &TableEntry,
    list: &[ast::Assignment],
) -> Result<Vec<(usize, Expr)>, SqlError> {
    list.iter()
        .map(|a| {
            let ast::AssignmentTarget::ColumnName(name) = &a.target else {
                return Err(SqlError::unsupported("tuple assignment"));
            };
            let column = match name.0.last() {
                Some(ast::ObjectNamePart::Identifier(i)) => bind::ident(i),
                _ => return Err(SqlError::unsupported(format!("assignment target {name}"))),
            };
            let i = table
                .schema
                .column_index(&column)
                .ok_or_else(|| SqlError::UnknownColumn(format!("{}.{column}", table.schema.name)))?;
            Ok((i, Binder::new(ctx, scope).bind(&a.value)?))
        })
        .collect()
}

/// The row after assignments evaluated on `input` (old row, plus `excluded` for upserts).
pub(super) fn assigned(
    table: &TableEntry,
    old: &Row,
    assignments: &[(usize, Expr)],
    input: &Row,
) -> Result<Row, SqlError> {
    let mut new = old.clone();
    for (i, e) in assignments {
        new[*i] = conform(e.eval(input)?, table.schema.columns[*i].ty);
    }
    Ok(new)
}

/// The operations turning `old` into `new`: one update of the changed plain columns and an
/// increment per changed counter.
pub(super) fn update_ops(table: &TableEntry, pk: &[Value], old: &Row, new: &Row) -> Result<Vec<WriteOp>, SqlError> {
    let schema = &table.schema;
    let mut set = Vec::new();
    let mut ops = Vec::new();
    for (i, column) in schema.columns.iter().enumerate() {
        let unchanged = match (&old[i], &new[i]) {
            (a, b) if a.is_null() || b.is_null() => a.is_null() && b.is_null(),
            (a, b) => a.kind() == b.kind() && value::compare(a, b).is_eq(),
        };
        if unchanged {
            continue;
        }
        if schema.primary_key.contains(&column.name) {
            return Err(SqlError::unsupported(format!(
                "changing primary-key column {}.{} (delete and insert instead)",
                schema.name, column.name
            )));
        }
        if column.ty == ColumnType::Counter {
            let (Value::Integer(before), Value::Integer(after)) = (&old[i], &new[i]) else {
                return Err(SqlError::invalid(format!(
                    "{}.{} is a COUNTER: it takes integers",
                    schema.name, column.name
                )));
            };
            let by = after.checked_sub(*before).ok_or(SqlError::IntegerOverflow)?;
            ops.push(WriteOp::Increment {
                table: schema.name.clone(),
                key: pk.to_vec(),
                column: column.name.clone(),
                by,
            });
        } else {
            set.push((column.name.clone(), new[i].clone()));
        }
    }
    if !set.is_empty() {
        ops.insert(0, WriteOp::Update { table: schema.name.clone(), key: pk.to_vec(), set });
    }
    Ok(ops)
}

/// Rows of one table matching `selection`, read through the normal planner.
fn matching_rows(
    ctx: PlanCtx<'_>,
    relation: &ast::TableWithJoins,
    selection: Option<&ast::Expr>,
) -> Result<(TableEntry, Scope, Vec<Row>, Reservation), SqlError> {
    let (table, scope, plan) = matching_plan(ctx, relation, selection)?;
    let (rows, reservation) = collect(exec::open(plan, ctx.snap, ctx.limits)?, ctx.limits)?;
    Ok((table, scope, rows, reservation))
}

/// Reads rows into memory, accounted against the statement's budget.
pub(super) fn collect(rows: exec::RowStream, limits: &Limits) -> Result<(Vec<Row>, Reservation), SqlError> {
    let mut reservation = limits.reservation();
    let mut all = Vec::new();
    for row in rows {
        let row = row?;
        reservation.grow(limits::row_bytes(&row))?;
        all.push(row);
    }
    Ok((all, reservation))
}

/// The plan that finds the rows an `UPDATE` or `DELETE` changes.
fn matching_plan(
    ctx: PlanCtx<'_>,
    relation: &ast::TableWithJoins,
    selection: Option<&ast::Expr>,
) -> Result<(TableEntry, Scope, Plan), SqlError> {
    if !relation.joins.is_empty() {
        return Err(SqlError::unsupported("UPDATE or DELETE with joins"));
    }
    let ast::TableFactor::Table { name, .. } = &relation.relation else {
        return Err(SqlError::unsupported("UPDATE or DELETE of a subquery"));
    };
    let table = target_table(ctx.snap, name)?.clone();
    if table.schema.append.is_some() {
        // docs/design.md § Append-only tables: rows are immutable; `delete` takes the
        // range form before it comes here.
        return Err(SqlError::invalid(format!(
            "table {} is append-only: its rows cannot be updated (DELETE takes a range of its time column)",
            table.schema.name
        )));
    }
    let (plan, scope) = from::plan_from(ctx, std::slice::from_ref(relation), selection)?;
    Ok((table, scope, plan))
}

/// `EXPLAIN` of a write statement: what it reads to find its rows, and that it writes
/// them as one batch.
pub(crate) fn explain(ctx: PlanCtx<'_>, statement: &ast::Statement) -> Result<Vec<String>, SqlError> {
    let (head, plan) = match statement {
        ast::Statement::Insert(ins) => {
            let plan = insert::plan_insert(ctx, ins)?;
            let head = format!("INSERT INTO {} ({})", plan.table.schema.name, plan.conflict_handling());
            (head, plan.source)
        }
        ast::Statement::Update(upd) => {
            let (relation, selection) = update_target(upd)?;
            let (table, scope, plan) = matching_plan(ctx, relation, selection)?;
            assignments(ctx, &scope, &table, &upd.assignments)?;
            (format!("UPDATE {} (each row found below)", table.schema.name), plan)
        }
        ast::Statement::Delete(del) => {
            let (relation, selection) = delete_target(del)?;
            if let Some(table) = append_only_target(ctx, relation)? {
                let ops = range_delete::plan(ctx, &table, relation, selection)?;
                let lines = vec![
                    "WRITE BATCH (one atomic, durable, replicated change)".to_string(),
                    format!("  {}", range_delete::explain(&table, &ops)),
                ];
                return Ok(lines);
            }
            let (table, _, plan) = matching_plan(ctx, relation, selection)?;
            (format!("DELETE FROM {} (each row found below)", table.schema.name), plan)
        }
        other => return Err(SqlError::unsupported(format!("EXPLAIN of {}", statement_feature(other)))),
    };
    let mut lines = vec!["WRITE BATCH (one atomic, durable, replicated change)".to_string(), format!("  {head}")];
    lines.extend(explain::explain(&plan).into_iter().map(|l| format!("    {l}")));
    Ok(lines)
}

/// The table and `WHERE` of a supported `UPDATE`.
fn update_target(upd: &ast::Update) -> Result<(&ast::TableWithJoins, Option<&ast::Expr>), SqlError> {
    if upd.from.is_some()
        || upd.returning.is_some()
        || upd.or.is_some()
        || !upd.order_by.is_empty()
        || upd.limit.is_some()
    {
        return Err(SqlError::unsupported("UPDATE with FROM, RETURNING, OR, ORDER BY or LIMIT"));
    }
    Ok((&upd.table, upd.selection.as_ref()))
}

fn update(ctx: PlanCtx<'_>, upd: &ast::Update) -> Result<(Vec<WriteOp>, u64), SqlError> {
    let (relation, selection) = update_target(upd)?;
    let (table, scope, rows, mut reservation) = matching_rows(ctx, relation, selection)?;
    let assignments = assignments(ctx, &scope, &table, &upd.assignments)?;
    let checks = Checks::bind(ctx, &table.schema)?;
    let mut ops = Vec::new();
    for old in &rows {
        ctx.limits.check()?;
        reservation.grow(limits::row_bytes(old))?;
        let new = assigned(&table, old, &assignments, old)?;
        checks.enforce(&new)?;
        ops.extend(update_ops(&table, &insert::pk_of(&table, old), old, &new)?);
    }
    Ok((ops, rows.len() as u64))
}

/// The table and `WHERE` of a supported `DELETE`.
fn delete_target(del: &ast::Delete) -> Result<(&ast::TableWithJoins, Option<&ast::Expr>), SqlError> {
    let extra = !del.tables.is_empty()
        || del.using.is_some()
        || del.returning.is_some()
        || !del.order_by.is_empty()
        || del.limit.is_some();
    if extra {
        return Err(SqlError::unsupported("DELETE with several tables, USING, RETURNING, ORDER BY or LIMIT"));
    }
    let relations = match &del.from {
        ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
    };
    let [relation] = relations.as_slice() else { return Err(SqlError::unsupported("DELETE from several tables")) };
    Ok((relation, del.selection.as_ref()))
}

/// The table of a `DELETE` if it is append-only (deleted by a range of its time column).
fn append_only_target(ctx: PlanCtx<'_>, relation: &ast::TableWithJoins) -> Result<Option<TableEntry>, SqlError> {
    match &relation.relation {
        ast::TableFactor::Table { name, .. } if relation.joins.is_empty() => {
            let table = target_table(ctx.snap, name)?;
            Ok(table.schema.append.is_some().then(|| table.clone()))
        }
        _ => Ok(None),
    }
}

fn delete(ctx: PlanCtx<'_>, del: &ast::Delete) -> Result<(Vec<WriteOp>, u64), SqlError> {
    let (relation, selection) = delete_target(del)?;
    if let Some(table) = append_only_target(ctx, relation)? {
        // The count comes from the write, which removes the rows.
        return Ok((range_delete::plan(ctx, &table, relation, selection)?, 0));
    }
    let (table, _, rows, _reservation) = matching_rows(ctx, relation, selection)?;
    let ops: Vec<WriteOp> = rows
        .iter()
        .map(|row| WriteOp::Delete { table: table.schema.name.clone(), key: insert::pk_of(&table, row) })
        .collect();
    Ok((ops, rows.len() as u64))
}
