//! `DELETE` on an append-only table (docs/design.md § Append-only tables and retention):
//! its rows are immutable and have no key, so a delete is one range of the time column,
//! written as a range tombstone ([`WriteOp::DeleteRange`]).
//!
//! The `WHERE` must be a conjunction of bounds on the time column (`<`, `<=`, `>`, `>=`,
//! `=`, `BETWEEN`) whose other side holds no column: a literal, a parameter or an
//! expression such as `unixepoch('now') * 1000 - 86400000`, evaluated once here. No
//! `WHERE` deletes every row. A bound compared with NULL deletes nothing, as in SQLite.

use sqlparser::ast;

use super::access::key_value;
use super::bind::{Binder, PlanCtx};
use super::expr::{CmpOp, Expr};
use super::{from, SqlError};
use crate::catalog::TableEntry;
use crate::replica::WriteOp;
use crate::schema::TableSchema;
use crate::types::Value;

/// The rows a range delete selects: none, or `[lo, hi)` (`None`: unbounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeRange {
    /// No row: the bounds exclude each other, or one is NULL.
    Empty,
    /// Times `t` with `lo ≤ t < hi`.
    Range { lo: Option<i64>, hi: Option<i64> },
}

/// Plans `DELETE FROM table [WHERE ...]` on an append-only table: its one write
/// operation, or none when the range is empty.
pub(crate) fn plan(
    ctx: PlanCtx<'_>,
    table: &TableEntry,
    relation: &ast::TableWithJoins,
    selection: Option<&ast::Expr>,
) -> Result<Vec<WriteOp>, SqlError> {
    let range = match selection {
        None => TimeRange::Range { lo: None, hi: None },
        Some(selection) => {
            let (_, scope) = from::plan_from(ctx, std::slice::from_ref(relation), None)?;
            let bound = Binder::new(ctx, &scope).bind(selection)?;
            time_range(&table.schema, &bound.conjuncts(), ctx.params)?
        }
    };
    Ok(match range {
        TimeRange::Empty => Vec::new(),
        TimeRange::Range { lo, hi } => vec![WriteOp::DeleteRange { table: table.schema.name.clone(), lo, hi }],
    })
}

/// `EXPLAIN` text of a range delete.
pub(crate) fn explain(table: &TableEntry, ops: &[WriteOp]) -> String {
    let name = &table.schema.name;
    let column = table.schema.time_column_index().map_or("time", |i| table.schema.columns[i].name.as_str());
    match ops.first() {
        Some(WriteOp::DeleteRange { lo: None, hi: None, .. }) => {
            format!("DELETE RANGE OF {name}: every row this node holds (a range tombstone)")
        }
        Some(WriteOp::DeleteRange { lo, hi, .. }) => {
            let lower = lo.map(|lo| format!("{column} >= {lo}"));
            let upper = hi.map(|hi| format!("{column} < {hi}"));
            let bounds: Vec<String> = lower.into_iter().chain(upper).collect();
            format!(
                "DELETE RANGE OF {name}: {} among the rows this node holds (a range tombstone)",
                bounds.join(" AND ")
            )
        }
        _ => format!("DELETE RANGE OF {name}: no row (the range is empty)"),
    }
}

fn refusal(schema: &TableSchema, why: &str) -> SqlError {
    let column = schema.time_column_index().map_or("its time column", |i| schema.columns[i].name.as_str());
    SqlError::invalid(format!(
        "DELETE FROM {} must be a range of {column}: a conjunction of <, <=, >, >=, = or BETWEEN \
         on {column} with constant bounds ({why})",
        schema.name
    ))
}

/// The value of a side of a comparison that holds no column, evaluated once.
fn constant(e: &Expr, params: &[Value]) -> Option<Value> {
    match e {
        Expr::Literal(v) => Some(v.clone()),
        Expr::Param(n) => params.get(*n).cloned(),
        _ => {
            let mut columns = false;
            e.visit_columns(&mut |_| columns = true);
            (!columns && !e.has_outer()).then(|| e.eval(&[]).ok()).flatten()
        }
    }
}

/// `(op, value)` bounds on column `c` that one conjunct states, if that is all it states.
fn bounds_of(e: &Expr, c: usize, params: &[Value]) -> Option<Vec<(CmpOp, Value)>> {
    let flip = |op| match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        other => other,
    };
    match e {
        Expr::Cmp(CmpOp::NotEq, _, _) => None,
        Expr::Cmp(op, a, b) => match (&**a, &**b) {
            (Expr::Column(x), v) if *x == c => Some(vec![(*op, constant(v, params)?)]),
            (v, Expr::Column(x)) if *x == c => Some(vec![(flip(*op), constant(v, params)?)]),
            _ => None,
        },
        Expr::Between(x, low, high, false) if matches!(&**x, Expr::Column(x) if *x == c) => {
            Some(vec![(CmpOp::GtEq, constant(low, params)?), (CmpOp::LtEq, constant(high, params)?)])
        }
        _ => None,
    }
}

/// The range of the time column the conjuncts select, or why they are not a range.
pub(crate) fn time_range(schema: &TableSchema, conjuncts: &[&Expr], params: &[Value]) -> Result<TimeRange, SqlError> {
    let c = schema.time_column_index().ok_or_else(|| refusal(schema, "the table has no time column"))?;
    let ty = schema.columns[c].ty;
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    let mut empty = false;
    for conjunct in conjuncts {
        let bounds = bounds_of(conjunct, c, params).ok_or_else(|| refusal(schema, "another condition"))?;
        for (op, value) in bounds {
            if value.is_null() {
                empty = true;
                continue;
            }
            let t = match key_value(&value, ty) {
                Some(Value::Integer(t) | Value::Timestamp(t)) => t,
                _ => return Err(refusal(schema, &format!("the bound {value} is not a whole {}", ty.sql_name()))),
            };
            // Each bound as `[from, to)`; an overflow past i64 leaves that side open or
            // the range empty.
            let (from, to) = match op {
                CmpOp::Eq => (Some(t), t.checked_add(1)),
                CmpOp::GtEq => (Some(t), None),
                CmpOp::Gt => match t.checked_add(1) {
                    Some(next) => (Some(next), None),
                    None => {
                        empty = true;
                        continue;
                    }
                },
                CmpOp::Lt => (None, Some(t)),
                CmpOp::LtEq => (None, t.checked_add(1)),
                CmpOp::NotEq => unreachable!("bounds_of refuses <>"),
            };
            lo = lo.max(from);
            hi = match (hi, to) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    if empty || lo.zip(hi).is_some_and(|(lo, hi)| lo >= hi) {
        return Ok(TimeRange::Empty);
    }
    Ok(TimeRange::Range { lo, hi })
}
