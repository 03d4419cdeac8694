//! Common table expressions: `WITH [RECURSIVE] name [(columns)] AS (query), ... SELECT ...`.
//!
//! A `WITH` clause opens a [`CteScope`] that the rest of its query (and every subquery in
//! it) resolves table names against before the catalog, innermost `WITH` first. Each
//! reference to a CTE plans its query again, as a subquery in `FROM` (SQLite may do the
//! same: it materializes a CTE only when that is cheaper), so a CTE holds no rows of its
//! own: its operators account their memory as any subquery's do. Every CTE of a clause is
//! visible in the bodies of the others, as in SQLite. Because references re-plan, CTEs
//! that each read the previous one twice would plan 2^n bodies: the text of all bodies
//! planned in one statement is bounded by [`CTE_EXPANSION_BYTES_MAX`].
//!
//! Recursion, as SQLite has it (with or without the keyword `RECURSIVE`, which SQLite does
//! not require): a CTE whose body is `anchor UNION [ALL] step` and whose `step` reads the
//! CTE itself becomes a [`Plan::Recursive`]: the anchor's rows, then `step` run on the
//! rows of the run before it (its reads of the CTE are a [`Plan::Work`] leaf) until a run
//! gives none; `UNION` drops rows seen before. The anchor may not read the CTE; any other
//! self-reference (in a body of another shape, or through another CTE) is refused.

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
    /// While the recursive step of this CTE is planned: what a read of it is.
    work: Option<WorkRef<'a>>,
    next: Option<&'a Active<'a>>,
}

/// The rows of a recursive CTE's previous run, as its step reads them.
#[derive(Clone, Copy)]
struct WorkRef<'a> {
    id: usize,
    columns: &'a [String],
    /// Set when the step reads the CTE: a step that does not is a plain `UNION`.
    read: &'a Cell<bool>,
}

/// What a name found in scope is.
enum Found<'a> {
    Cte(&'a ast::Cte, &'a CteScope<'a>),
    Work(WorkRef<'a>),
}

/// Plans `f` with the CTEs of `with` in scope (checked first: no recursion, no duplicate
/// names).
pub(crate) fn with_scope<T>(
    ctx: PlanCtx<'_>,
    with: &ast::With,
    f: impl FnOnce(PlanCtx<'_>) -> Result<T, SqlError>,
) -> Result<T, SqlError> {
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
fn find<'a>(scope: &'a CteScope<'a>, name: &str) -> Result<Option<Found<'a>>, SqlError> {
    let mut level = Some(scope);
    while let Some(s) = level {
        if let Some(cte) = s.ctes.iter().find(|c| bind::ident(&c.alias.name) == name) {
            let mut active = scope.active;
            while let Some(a) = active {
                if std::ptr::eq(a.cte, cte) {
                    return match a.work {
                        Some(work) => Ok(Some(Found::Work(work))),
                        None => Err(SqlError::unsupported(format!(
                            "this recursive common table expression: {name} reads itself other than in the \
                             step of WITH RECURSIVE {name} AS (anchor UNION [ALL] step)"
                        ))),
                    };
                }
                active = a.next;
            }
            return Ok(Some(Found::Cte(cte, s)));
        }
        level = s.parent;
    }
    Ok(None)
}

/// If `name` is a CTE in scope, its planned query and column names.
pub(crate) fn reference(ctx: PlanCtx<'_>, name: &str) -> Result<Option<(Plan, Vec<String>)>, SqlError> {
    let Some(scope) = ctx.ctes else { return Ok(None) };
    let (cte, defined_in) = match find(scope, name)? {
        None => return Ok(None),
        Some(Found::Work(work)) => {
            work.read.set(true);
            let plan = Plan::Work { work: work.id, name: name.to_string() };
            return Ok(Some((plan, work.columns.to_vec())));
        }
        Some(Found::Cte(cte, defined_in)) => (cte, defined_in),
    };
    let bytes = defined_in.expanded.get().saturating_add(cte.query.to_string().len());
    if bytes > CTE_EXPANSION_BYTES_MAX {
        return Err(SqlError::CteExpansion { limit_bytes: CTE_EXPANSION_BYTES_MAX });
    }
    defined_in.expanded.set(bytes);
    if let Some(planned) = recursive(ctx, scope, cte, defined_in)? {
        return Ok(Some(planned));
    }
    let planned = plan_body(ctx, scope, cte, defined_in, None, &cte.query)?;
    Ok(Some((planned.plan, columns_of(cte, planned.columns)?)))
}

/// Plans `query` (a CTE's body, or part of it) as the body of `cte`: it sees the CTEs of
/// its own `WITH` clause and those around it, not the query that reads it; the CTEs being
/// planned on the way here stay active in it.
fn plan_body(
    ctx: PlanCtx<'_>,
    scope: &CteScope<'_>,
    cte: &ast::Cte,
    defined_in: &CteScope<'_>,
    work: Option<WorkRef<'_>>,
    query: &ast::Query,
) -> Result<select::Planned, SqlError> {
    let active = Active { cte, work, next: scope.active };
    let body_scope =
        CteScope { ctes: &[], parent: Some(defined_in), active: Some(&active), expanded: defined_in.expanded };
    let body_ctx = PlanCtx { ctes: Some(&body_scope), ..ctx.uncorrelated() }.deeper(SUBQUERY_DEPTH_COST)?;
    select::plan_query(body_ctx, query)
}

/// The CTE's column names: its column list, else its query's.
fn columns_of(cte: &ast::Cte, planned: Vec<String>) -> Result<Vec<String>, SqlError> {
    if cte.alias.columns.is_empty() {
        return Ok(planned);
    }
    let (values, columns) = (planned.len(), cte.alias.columns.len());
    if values != columns {
        let name = bind::ident(&cte.alias.name);
        return Err(SqlError::invalid(format!("table {name} has {values} values for {columns} columns")));
    }
    Ok(cte.alias.columns.iter().map(|c| bind::ident(&c.name)).collect())
}

/// Whether the text of `step` may name the CTE `name`: false only when `name` is a plain
/// word that no word of the text equals, so that a `UNION` CTE that is not recursive is
/// not planned twice (its uncorrelated subqueries would run twice).
fn may_mention(step: &ast::SetExpr, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if !name.chars().all(word) {
        return true;
    }
    step.to_string().to_ascii_lowercase().split(|c: char| !word(c)).any(|w| w == name)
}

/// `anchor UNION [ALL] step` whose step reads the CTE: a [`Plan::Recursive`]. `None` when
/// the body has another shape or its step does not read the CTE (a plain compound).
fn recursive(
    ctx: PlanCtx<'_>,
    scope: &CteScope<'_>,
    cte: &ast::Cte,
    defined_in: &CteScope<'_>,
) -> Result<Option<(Plan, Vec<String>)>, SqlError> {
    let ast::SetExpr::SetOperation { op: ast::SetOperator::Union, set_quantifier, left, right } = &*cte.query.body
    else {
        return Ok(None);
    };
    let distinct = match set_quantifier {
        ast::SetQuantifier::All => false,
        ast::SetQuantifier::Distinct | ast::SetQuantifier::None => true,
        _ => return Ok(None),
    };
    let name = bind::ident(&cte.alias.name);
    if !may_mention(right, &name) {
        // A plain compound: planned once, as a whole, by the caller.
        return Ok(None);
    }
    // Each side as a query of its own; the body's ORDER BY and LIMIT are refused below.
    let part = |body: &ast::SetExpr| ast::Query {
        body: Box::new(body.clone()),
        order_by: None,
        limit_clause: None,
        fetch: None,
        ..(*cte.query).clone()
    };
    let anchor = plan_body(ctx, scope, cte, defined_in, None, &part(left))?;
    let columns = columns_of(cte, anchor.columns)?;
    let read = Cell::new(false);
    let work = WorkRef { id: std::ptr::from_ref(cte) as usize, columns: &columns, read: &read };
    let mut step = plan_body(ctx, scope, cte, defined_in, Some(work), &part(right))?;
    if !read.get() {
        return Ok(None);
    }
    match step.plan.work_reads(work.id) {
        // Read only inside a subquery of the step, which SQLite refuses too.
        (0, _) => {
            return Err(SqlError::invalid(format!(
                "the recursive table {name} may be read only in the FROM clause of its recursive SELECT"
            )))
        }
        (n, _) if n > 1 => {
            return Err(SqlError::unsupported(format!("multiple references to the recursive table {name} in its step")))
        }
        (_, true) => {
            return Err(SqlError::unsupported(format!(
                "an aggregate or window function over the recursive table {name} in its step"
            )))
        }
        _ => {}
    }
    if cte.query.order_by.is_some() || cte.query.limit_clause.is_some() || cte.query.fetch.is_some() {
        return Err(SqlError::unsupported(format!(
            "ORDER BY or LIMIT in the recursive common table expression {name}"
        )));
    }
    if step.columns.len() != columns.len() {
        return Err(SqlError::invalid(format!(
            "SELECTs to the left and right of UNION do not have the same number of result columns ({name})"
        )));
    }
    let plan =
        Plan::Recursive { anchor: Box::new(anchor.plan), step: Box::new(step.plan), distinct, work: work.id, name };
    Ok(Some((plan, columns)))
}
