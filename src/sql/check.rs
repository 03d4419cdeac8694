//! `CHECK` constraints: bound once per statement, evaluated on every row a local
//! `INSERT` or `UPDATE` writes.
//!
//! A constraint is stored as SQL text in the table's definition (`schema::CheckDef`),
//! because the catalog layer knows nothing of SQL; here it is parsed and bound against the
//! table's columns. SQLite's semantics: a row fails only when the expression is false (0);
//! NULL passes. Changes merged from other nodes are not re-checked: a CRDT merge cannot be
//! refused after the fact, so two rows that each passed on their own node can merge into
//! one that would not.

use super::bind::{self, Binder, PlanCtx};
use super::expr::Expr;
use super::parse;
use super::plan::Scope;
use super::SqlError;
use crate::schema::TableSchema;
use crate::types::Value;

/// A table's constraints, bound to positions in its full row.
pub(super) struct Checks {
    /// What the error names (the constraint's name, else its expression) and the test.
    bound: Vec<(String, Expr)>,
}

impl Checks {
    /// Binds every `CHECK` of `schema`; an expression that cannot be a constraint (a
    /// parameter, a subquery, an aggregate, an unknown column) is an error naming it.
    pub(super) fn bind(ctx: PlanCtx<'_>, schema: &TableSchema) -> Result<Checks, SqlError> {
        if schema.checks.is_empty() {
            return Ok(Checks { bound: Vec::new() });
        }
        // A constraint sees only the row: no parameters of the statement that runs it.
        let ctx = PlanCtx::new(ctx.snap, &[], ctx.limits);
        let mut scope = Scope::default();
        scope.push_table(&schema.name, schema.sql_names())?;
        scope.mark_timestamps(schema);
        let bound = schema
            .checks
            .iter()
            .map(|check| {
                let label = check.name.clone().unwrap_or_else(|| check.expr_sql.clone());
                Ok((label, bind_one(ctx, &scope, &check.expr_sql)?))
            })
            .collect::<Result<_, SqlError>>()?;
        Ok(Checks { bound })
    }

    /// Refuses a row that makes a constraint false.
    pub(super) fn enforce(&self, row: &[Value]) -> Result<(), SqlError> {
        match self.first_failed(row)? {
            Some(label) => Err(SqlError::CheckFailed(label.to_string())),
            None => Ok(()),
        }
    }

    /// Whether the row makes no constraint false (`INSERT OR IGNORE` skips one that does).
    pub(super) fn passes(&self, row: &[Value]) -> Result<bool, SqlError> {
        Ok(self.first_failed(row)?.is_none())
    }

    fn first_failed(&self, row: &[Value]) -> Result<Option<&str>, SqlError> {
        for (label, expr) in &self.bound {
            if expr.truth(row)? == Some(false) {
                return Ok(Some(label));
            }
        }
        Ok(None)
    }
}

fn bind_one(ctx: PlanCtx<'_>, scope: &Scope, sql: &str) -> Result<Expr, SqlError> {
    let refuse = |what: &str| SqlError::unsupported(format!("{what} in a CHECK constraint: {sql}"));
    let parsed = parse::parse_expr(sql)?;
    if parsed.has_params {
        return Err(refuse("parameters"));
    }
    if parsed.has_query {
        return Err(refuse("subqueries"));
    }
    if bind::has_aggregate(&parsed.expr) {
        return Err(refuse("aggregate functions"));
    }
    Binder::new(ctx, scope).bind(&parsed.expr)
}
