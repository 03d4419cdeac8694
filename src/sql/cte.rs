//! Common table expressions: `WITH name [(columns)] AS (query), ... SELECT ...`, not
//! recursive.
//!
//! A `WITH` clause opens a [`CteScope`] that the rest of its query (and every subquery in
//! it) resolves table names against before the catalog, innermost `WITH` first. Each
//! reference to a CTE plans its query again, as a subquery in `FROM` (SQLite may do the
//! same: it materializes a CTE only when that is cheaper), so a CTE holds no rows of its
//! own: its operators account their memory as any subquery's do. Every CTE of a clause is
//! visible in the bodies of the others, as in SQLite; a body that reads the CTE being
//! defined, even through another one, would be recursion, which is refused. `WITH
//! RECURSIVE` is accepted when no CTE reads itself (SQLite allows the keyword on any
//! `WITH`). Because references re-plan, CTEs that each read the previous one twice would
//! plan 2^n bodies: the text of all bodies planned in one statement is bounded by
//! [`CTE_EXPANSION_BYTES_MAX`].

use std::cell::Cell;

use sqlparser::ast;

use super::bind::{self, PlanCtx};
use super::limits::SUBQUERY_DEPTH_COST;
use super::parse::SQL_BYTES_MAX;
use super::plan::Plan;
use super::{select, SqlError};

/// Most SQL text (bytes of CTE bodies, counted once per reference) one statement's CTE
/// references may plan: 4 times the longest statement.
pub const CTE_EXPANSION_BYTES_MAX: usize = 4 * SQL_BYTES_MAX;

/// The CTEs visible where a query is planned.
pub(crate) struct CteScope<'a> {
    /// The CTEs of one `WITH` clause (none on the level a CTE's body is planned in).
    ctes: &'a [ast::Cte],
    /// The enclosing level in the text (where the `WITH` clause around this one is).
    parent: Option<&'a CteScope<'a>>,
    /// The CTEs whose bodies are being planned on the way here: reading one is recursion.
    active: Option<&'a Active<'a>>,
    /// Bytes of CTE bodies planned so far in the statement (shared by every level).
    expanded: &'a Cell<usize>,
}

/// A CTE whose body is being planned, and the ones around it (a linked list on the stack).
struct Active<'a> {
    cte: &'a ast::Cte,
    next: Option<&'a Active<'a>>,
}

/// Plans `f` with the CTEs of `with` in scope (checked first: no recursion, no duplicate
/// names).
pub(crate) fn with_scope<T>(
    ctx: PlanCtx<'_>,
    with: &ast::With,
    f: impl FnOnce(PlanCtx<'_>) -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    // `with.recursive` changes nothing here: a CTE that reads itself is refused either way.
    for (i, cte) in with.cte_tables.iter().enumerate() {
        let name = bind::ident(&cte.alias.name);
        if with.cte_tables[..i].iter().any(|c| bind::ident(&c.alias.name) == name) {
            return Err(SqlError::invalid(format!("duplicate WITH table name: {name}")));
        }
        if cte.from.is_some() {
            return Err(SqlError::unsupported(format!("FROM after the common table expression {name}")));
        }
        if cte.alias.columns.iter().any(|c| c.data_type.is_some()) {
            return Err(SqlError::unsupported(format!("column types in the column list of the CTE {name}")));
        }
    }
    let own = Cell::new(0);
    let expanded = ctx.ctes.map_or(&own, |parent| parent.expanded);
    let active = ctx.ctes.and_then(|parent| parent.active);
    let scope = CteScope { ctes: &with.cte_tables, parent: ctx.ctes, active, expanded };
    f(PlanCtx { ctes: Some(&scope), ..ctx })
}

/// The CTE `name` refers to where `scope` is (innermost `WITH` first), and the level that
/// defines it; refused when its body is being planned (recursion, also through others).
fn find<'a>(scope: &'a CteScope<'a>, name: &str) -> Result<Option<(&'a ast::Cte, &'a CteScope<'a>)>, SqlError> {
    let mut level = Some(scope);
    while let Some(s) = level {
        if let Some(cte) = s.ctes.iter().find(|c| bind::ident(&c.alias.name) == name) {
            let mut active = scope.active;
            while let Some(a) = active {
                if std::ptr::eq(a.cte, cte) {
                    return Err(SqlError::unsupported(format!(
                        "recursive common table expressions (WITH RECURSIVE): {name} reads itself, directly or \
                         through another CTE"
                    )));
                }
                active = a.next;
            }
            return Ok(Some((cte, s)));
        }
        level = s.parent;
    }
    Ok(None)
}

/// If `name` is a CTE in scope, its planned query and column names.
pub(crate) fn reference(ctx: PlanCtx<'_>, name: &str) -> Result<Option<(Plan, Vec<String>)>, SqlError> {
    let Some(scope) = ctx.ctes else { return Ok(None) };
    let Some((cte, defined_in)) = find(scope, name)? else { return Ok(None) };
    let bytes = defined_in.expanded.get().saturating_add(cte.query.to_string().len());
    if bytes > CTE_EXPANSION_BYTES_MAX {
        return Err(SqlError::CteExpansion { limit_bytes: CTE_EXPANSION_BYTES_MAX });
    }
    defined_in.expanded.set(bytes);
    // The body sees the CTEs of its own WITH clause and those around it, not the query
    // that reads it; the CTEs being planned on the way here stay active in it.
    let active = Active { cte, next: scope.active };
    let body_scope =
        CteScope { ctes: &[], parent: Some(defined_in), active: Some(&active), expanded: defined_in.expanded };
    let body_ctx = PlanCtx { ctes: Some(&body_scope), ..ctx.uncorrelated() }.deeper(SUBQUERY_DEPTH_COST)?;
    let planned = select::plan_query(body_ctx, &cte.query)?;
    if cte.alias.columns.is_empty() {
        return Ok(Some((planned.plan, planned.columns)));
    }
    let (values, columns) = (planned.columns.len(), cte.alias.columns.len());
    if values != columns {
        return Err(SqlError::invalid(format!("table {name} has {values} values for {columns} columns")));
    }
    Ok(Some((planned.plan, cte.alias.columns.iter().map(|c| bind::ident(&c.name)).collect())))
}
